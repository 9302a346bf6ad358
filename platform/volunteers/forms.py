from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used only for password resets.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_username(self):
        """Refuse a name that looks like an existing one (``аdmin`` with a Cyrillic а, ``ADMlN``): the
        comparison is on NFKC, case-folded skeletons with lookalike letters mapped (btard_site.security)."""
        from btard_site.security import lookalike_of

        username = super().clean_username()
        if not username:  # Django's own check already refused it (same name, any case)
            return username
        taken = lookalike_of(username, get_user_model().objects.values_list("username", flat=True).iterator())
        if taken is not None:
            raise forms.ValidationError("This name is taken or looks too much like an existing one; "
                                        "please choose another.")
        return username
