"""The published credit rules (shown on the leaderboard and the volunteer page, used by the selectors)."""

CREDIT_RULES = [
    ("A step counts when the site closed it as applied: a strict majority of its group reported the update as "
     "applied. Dropped steps count for nobody, and nobody is charged for them."),
    ("For each counted step, each of your workers that was a group member, reported the step as applied and was "
     "not banned when the step closed earns the samples the site assigned to a member: the run's batch size (or "
     "its global batch divided among the group). A worker's own count is never believed beyond that."),
    "Credit is the sum of those samples; steps accepted is the number of such steps.",
    ("Time online is the wall time of the steps your workers took part in and reported (members and "
     "probation candidates), from the site's own clock."),
    ("Bans are the active bans of the account (each one links to its evidence on the trust page). Credit earned "
     "before a ban stays in the history; the ban is shown next to it."),
    ("Rank orders accounts by credit, then steps accepted, then name. The leaderboard and your own page use the "
     "same numbers."),
]
