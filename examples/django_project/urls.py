"""URL configuration of the example Django project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/items/", views.items, name="items"),
    path("form/", views.form, name="form"),
    path("upload/", views.upload, name="upload"),
    path("upload-raw/", views.upload_raw, name="upload-raw"),
    path("stream/", views.stream, name="stream"),
    path("files/<str:name>", views.files, name="files"),
    path("old/", views.old, name="old"),
    path("login/", views.login, name="login"),
    path("me/", views.me, name="me"),
    path("logout/", views.logout, name="logout"),
    path("cookies/set/", views.set_cookies, name="set-cookies"),
    path("cookies/", views.cookies, name="cookies"),
    path("boom/", views.boom, name="boom"),
]
