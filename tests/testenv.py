"""Test environment defaults, loaded as a pytest plugin (`-p tests.testenv`) before Django starts.

Every value is still read by webapp/settings.py from the environment; these are only defaults.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-not-for-production-use-000000")
os.environ.setdefault("DJANGO_SECURE_COOKIES", "false")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("DJANGO_HSTS_SECONDS", "0")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
os.environ.setdefault("WHITENOISE_USE_FINDERS", "true")
os.environ.setdefault("WHITENOISE_AUTOREFRESH", "true")
