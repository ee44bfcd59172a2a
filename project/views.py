"""The demo site's home page (the realtime app ships no pages of its own but the admin's)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@ensure_csrf_cookie  # client.js posts SSE frames with it
@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "realtime/home.html")
