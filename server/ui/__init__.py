"""The dashboard: server-rendered pages under ``/ui/`` (see ``server.ui.app``)."""
