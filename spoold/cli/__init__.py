"""spoold's operator commands (``commands``) and how they find the spool (``locate``).

Nothing is imported here: ``spoold serve`` reads ``locate``'s defaults without paying for
the commands' imports (see ``spoold.spool.prescan``).
"""
