"""Settings for BTARD Swarm.

Two shapes, one file:

* **embedded default** (no variables set): SQLite file under ``var/``, in-memory channel layer,
  Celery tasks run in-process. Works on a laptop with nothing else installed.
* **production** (``BTARD_PRODUCTION=1``): ``SECRET_KEY`` required, ``DEBUG`` off, secure cookies.

``DATABASE_URL`` (postgres://... or sqlite:///path) and ``REDIS_URL`` (channel layer and Celery broker)
apply in either shape, so the test suite can run against real PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_int, env_list, env_networks, env_path, env_str, parse_database_url

PLATFORM_DIR = Path(__file__).resolve().parent.parent
BASE_DIR = PLATFORM_DIR.parent
VAR_DIR = env_path("BTARD_VAR_DIR", BASE_DIR / "var")

PRODUCTION = env_bool("BTARD_PRODUCTION", False)
DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when BTARD_PRODUCTION=1")

if PRODUCTION:
    SECRET_KEY = env_str("SECRET_KEY", required=True)
    if len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters in production")
else:
    SECRET_KEY = env_str("SECRET_KEY", "embedded-insecure-key-for-local-use-only-" + "x" * 20)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "django_celery_beat",
    "btard_site",
]
# Domain apps register themselves here (kept in one list so ordering is obvious).
DOMAIN_APPS: list[str] = ["volunteers", "runs", "admission", "moderation", "live", "organiser", "credit"]
INSTALLED_APPS += DOMAIN_APPS

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "btard_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
ASGI_APPLICATION = "btard_site.asgi.application"
WSGI_APPLICATION = None

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": parse_database_url(DATABASE_URL)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Daphne runs every database call of every socket in one thread: keep its connection open
    # instead of reconnecting per message (heartbeats would pay a PostgreSQL handshake each).
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 300, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Daphne, Celery and the checkpoint upload write at once: wait for the writer (busy timeout), let readers
    # run beside it (WAL), and take the write lock when a transaction starts (IMMEDIATE): a deferred
    # transaction that upgrades to a writer later fails at once with "database is locked", timeout or not.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=env_int("SQLITE_BUSY_TIMEOUT_SECONDS", 20, minimum=1), transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# Sites sharing one Redis (parallel test runs, staging next to production) must not meet in channel
# groups such as ``workers.token.1`` or in cache keys: namespace both by the database by default.
REDIS_NAMESPACE = env_str("REDIS_NAMESPACE", f"{DATABASES['default']['NAME']}".replace("/", "_")[-40:])
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1500, "expiry": 30, "prefix": f"asgi:{REDIS_NAMESPACE}:"},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": REDIS_NAMESPACE}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or "cache+memory://"
# Without a broker the embedded default runs tasks in-process; with Redis they go to a worker
# unless CELERY_TASK_ALWAYS_EAGER says otherwise.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", REDIS_URL is None)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict = {
    # django-celery-beat's DatabaseScheduler imports these into its tables on start
    "tick-runs": {"task": "runs.tick_runs", "schedule": 5.0},
    "mark-stale-peers-offline": {"task": "runs.mark_stale_peers_offline", "schedule": 10.0},
    "recompute-reputation": {"task": "volunteers.recompute_reputation", "schedule": 300.0},
    "promote-candidates": {"task": "runs.promote_candidates", "schedule": 30.0},
    "expire-broadcast-logs": {"task": "runs.expire_broadcasts", "schedule": 3600.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "staticfiles")
SERVE_STATIC = env_bool("SERVE_STATIC", True)  # asgi.py serves /static/ under Daphne

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/me/"
LOGOUT_REDIRECT_URL = "/"

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "btard-swarm@localhost")

# Websocket message limits (bytes) for /ws/worker/.
WORKER_MAX_MESSAGE_BYTES = env_int("WORKER_MAX_MESSAGE_BYTES", 256 * 1024, minimum=1024)
# model checkpoints uploaded by workers (runs.checkpoints): where, how large at most, how many per run
CHECKPOINT_DIR = env_path("BTARD_CHECKPOINT_DIR", VAR_DIR / "checkpoints")
CHECKPOINT_MAX_BYTES = env_int("CHECKPOINT_MAX_BYTES", 512 * 1024 * 1024, minimum=1024)
CHECKPOINTS_KEPT = env_int("CHECKPOINTS_KEPT", 2, minimum=1)
# Every other request body (forms, JSON) is refused above this size before it is read (F9).
BTARD_MAX_BODY_BYTES = env_int("BTARD_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = BTARD_MAX_BODY_BYTES
# Sign-up rate limits.
SIGNUP_LIMIT_PER_ADDRESS = env_int("SIGNUP_LIMIT_PER_ADDRESS", 5, minimum=1)
SIGNUP_LIMIT_GLOBAL = env_int("SIGNUP_LIMIT_GLOBAL", 200, minimum=1)
SIGNUP_LIMIT_WINDOW_SECONDS = env_int("SIGNUP_LIMIT_WINDOW_SECONDS", 3600, minimum=1)
HEARTBEAT_TIMEOUT_SECONDS = env_int("HEARTBEAT_TIMEOUT_SECONDS", 30, minimum=1)
# The TLS proxy in front of Daphne: only a request from one of these addresses has its X-Forwarded-For
# read (btard_site.security.client_address); without it every client behind the proxy shares one address.
TRUSTED_PROXIES = env_networks("BTARD_TRUSTED_PROXIES", [])
# Sybil limits per account (and per address): live worker tokens, keys per run, tokens issued per hour
MAX_LIVE_TOKENS_PER_ACCOUNT = env_int("MAX_LIVE_TOKENS_PER_ACCOUNT", 5, minimum=1)
MAX_KEYS_PER_ACCOUNT_PER_RUN = env_int("MAX_KEYS_PER_ACCOUNT_PER_RUN", 2, minimum=1)
TOKENS_PER_ADDRESS_PER_HOUR = env_int("TOKENS_PER_ADDRESS_PER_HOUR", 10, minimum=1)
# Login (site and admin) and token-check throttles, per address and per account (F10)
LOGIN_LIMIT_PER_ADDRESS = env_int("LOGIN_LIMIT_PER_ADDRESS", 30, minimum=1)
LOGIN_LIMIT_PER_ACCOUNT = env_int("LOGIN_LIMIT_PER_ACCOUNT", 10, minimum=1)
LOGIN_LIMIT_WINDOW_SECONDS = env_int("LOGIN_LIMIT_WINDOW_SECONDS", 900, minimum=1)
TOKEN_CHECK_LIMIT_PER_ADDRESS = env_int("TOKEN_CHECK_LIMIT_PER_ADDRESS", 60, minimum=1)  # per minute
SIGNUP_LIMIT_PER_EMAIL = env_int("SIGNUP_LIMIT_PER_EMAIL", 3, minimum=1)  # per SIGNUP_LIMIT_WINDOW_SECONDS
# reachability checks one peer may ask for per hour (each makes another volunteer's worker dial it)
REACHABILITY_REQUESTS_PER_HOUR = env_int("REACHABILITY_REQUESTS_PER_HOUR", 4, minimum=1)

# Content-Security-Policy and Permissions-Policy (btard_site.security): on in production, BTARD_CSP=1 elsewhere
CSP_ENABLED = env_bool("BTARD_CSP", PRODUCTION)
if CSP_ENABLED:
    MIDDLEWARE.insert(1, "btard_site.security.SecurityHeadersMiddleware")

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
