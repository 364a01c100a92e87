"""Built-in diffkit plugins (installed as `diffkit.plugins`), each registered by entry point."""
