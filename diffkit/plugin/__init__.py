"""The plugin machinery: hook specifications, the registry, typed options and their validation."""
