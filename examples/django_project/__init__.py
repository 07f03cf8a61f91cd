"""A minimal Django project served by this worker (no database, no migrations).

    gunicorn --worker-class gunicorn_fdpass.Worker -w 2 examples.django_project.wsgi:application
"""
