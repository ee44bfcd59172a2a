from django import forms


class MessageForm(forms.Form):
    """The text an admin sends to users or to everyone; delivered as {"text": ...}."""

    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=4000)
