from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from realtime import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("api/whoami", views.whoami, name="whoami"),
    path("api/push", views.api_push, name="api-push"),
    path("api/broadcast", views.api_broadcast, name="api-broadcast"),
    path("api/publish", views.api_publish, name="api-publish"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
