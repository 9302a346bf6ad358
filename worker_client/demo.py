"""``make demo``: migrate, create the demo admin and serve the site under Daphne on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="btard-demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], check=True, env=env, cwd=ROOT)
    subprocess.run(
        [*manage, "shell", "-c",
         "from django.contrib.auth import get_user_model as g; U=g();"
         "U.objects.filter(username='admin').exists() or U.objects.create_superuser('admin','admin@localhost','admin')"],
        check=True, env=env, cwd=ROOT)
    print(f"\n  BTARD Swarm is up: http://127.0.0.1:{args.port}/   (admin login: admin / admin)\n", flush=True)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT), env.get("PYTHONPATH", "")])
    try:
        return subprocess.call([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(args.port),
                                "btard_site.asgi:application"], env=env, cwd=ROOT)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
