"""The dashboard (``/ui``): server-rendered pages over the capability services, signed in
with an API key into a sealed HttpOnly cookie; every asset ships in this package."""
