"""The operator web console: one static page (HTML + JS + CSS) served at ``/console``.

The page is read-mostly and holds no server-side state: it calls the REST API under ``/api/v1``
with the operator token the user pastes (kept in the browser's sessionStorage only). Nothing here
touches the database or embeds a token; `routes.mount_console` is the only entry point.
"""
