from django.urls import path

from studies import views

app_name = "studies"
urlpatterns = [
    path("s/<slug:slug>/", views.entry, name="entry"),
    path("s/<slug:slug>/resume/", views.resume, name="resume"),
    path("s/<slug:slug>/consent/", views.consent, name="consent"),
    path("s/<slug:slug>/brief/", views.brief, name="brief"),
    path("s/<slug:slug>/check/", views.check, name="check"),
    path("s/<slug:slug>/chat/", views.chat, name="chat"),
    path("s/<slug:slug>/finish/", views.finish, name="finish"),
    path("s/<slug:slug>/document/", views.document, name="document"),
    path("s/<slug:slug>/document/preview/", views.document_preview, name="document_preview"),
    path("s/<slug:slug>/final/", views.final, name="final"),
    path("s/<slug:slug>/done/", views.done, name="done"),
    path("s/<slug:slug>/closed/", views.closed, name="closed"),
    path("s/<slug:slug>/alive/", views.alive, name="alive"),
]
