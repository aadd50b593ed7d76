"""The web console and HTTP API that ``jdxmail serve`` runs beside the SMTP server.

Only HTTP lives here: routes, templates, one JSON shape per resource. The logic the
pages show or change is the core's (queue admin, users, diagnostics, findings), shared
with the CLI. :class:`~jdxmail.web.console.WebConsole` is the serve component;
:func:`~jdxmail.web.app.build_app` the Starlette app.
"""
