"""Placeholder while this module is being written."""


def register():
    pass


def unregister():
    pass
