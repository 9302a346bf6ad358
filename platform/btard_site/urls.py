from django.contrib import admin
from django.contrib.auth import views as auth_views
from credit import views as credit_views
from django.urls import path
from moderation import views as moderation_views
from organiser import views as organiser_views
from runs import views as runs_views
from volunteers import views as volunteer_views

from . import status_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    # volunteers
    path("signup/", volunteer_views.signup, name="signup"),
    path("login/", views.login, name="login"),  # throttled per address and account
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password-reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("me/", volunteer_views.me, name="me"),
    path("tokens/", volunteer_views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", volunteer_views.revoke_token, name="revoke-token"),
    # runs
    path("runs/<int:pk>/", runs_views.run_detail, name="run"),
    # moderation
    path("bans/", moderation_views.ban_list, name="bans"),
    path("moderation/", moderation_views.queue, name="moderation"),
    path("moderation/cases/<int:pk>/", moderation_views.case_action, name="case-action"),
    path("moderation/bans/<int:pk>/unban/", moderation_views.unban, name="unban"),
    # public JSON
    path("api/runs/", runs_views.api_runs, name="api-runs"),
    path("api/runs/<int:pk>/", runs_views.api_run, name="api-run"),
    path("api/runs/<int:pk>/checkpoints/<int:step>/", runs_views.api_checkpoint_upload, name="api-checkpoint-upload"),
    path("runs/<int:pk>/checkpoint/", runs_views.checkpoint_download, name="run-checkpoint"),
    path("api/bans/", moderation_views.api_bans, name="api-bans"),
    path("api/worker/check", volunteer_views.worker_check, name="api-worker-check"),
    # credit, network status, trust (public)
    path("leaderboard/", credit_views.leaderboard_page, name="leaderboard"),
    path("api/leaderboard/", credit_views.api_leaderboard, name="api-leaderboard"),
    path("network/", status_views.network, name="network"),
    path("trust/", status_views.trust, name="trust"),
    path("trust/bans/<int:pk>/", status_views.ban_evidence, name="ban-evidence"),
    # run control for organisers (staff)
    path("organise/", organiser_views.organise, name="organise"),
    path("organise/runs/new/", organiser_views.create_run, name="organise-create"),
    path("organise/runs/<int:pk>/min-version/", organiser_views.min_version, name="organise-min-version"),
    path("organise/runs/<int:pk>/announce/", organiser_views.announce, name="organise-announce"),
    path("organise/runs/<int:pk>/<str:action>/", organiser_views.run_action, name="organise-run-action"),
    # the worker wheel the join box installs
    path("dist/<str:filename>", organiser_views.worker_wheel, name="worker-wheel"),
    path("admin/login/", views.admin_login, name="admin-login"),  # throttled, before the admin's own URLs
    path("admin/", admin.site.urls),
]
