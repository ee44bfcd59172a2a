from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from chat import views as chat_views
from lab import views as lab_views
from ops import views as ops_views
from project import views

urlpatterns = [
    path("", views.home, name="home"),
    # Switchboard's endpoints: /healthz, /api/*, /sse/send.
    path("", include("realtime.urls")),
    path("lab/", lab_views.lab_page, name="lab"),
    # /lab/nosticky/...: the same views; HAProxy routes them ignoring the SERVERID cookie.
    re_path(r"^lab/(?:nosticky/)?(?P<way>http|direct|relay)$", lab_views.lab_send, name="lab-send"),
    path("cluster/", ops_views.cluster_page, name="cluster"),
    path("cluster/drain", ops_views.drain_replica, name="cluster-drain"),
    path("chat/", chat_views.chat_home, name="chat"),
    path("chat/create/", chat_views.room_create, name="chat-create"),
    path("chat/<slug:slug>/", chat_views.room_page, name="chat-room"),
    path("chat/<slug:slug>/join/", chat_views.room_join, name="chat-join"),
    path("chat/<slug:slug>/leave/", chat_views.room_leave, name="chat-leave"),
    path("chat/<slug:slug>/invite/", chat_views.room_invite, name="chat-invite"),
    path("chat/<slug:slug>/messages", chat_views.room_messages, name="chat-messages"),
    path("chat/<slug:slug>/presence", chat_views.room_presence, name="chat-presence"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
