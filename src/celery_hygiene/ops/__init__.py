"""The operator surface: the admin, reports, the audit and the system checks."""
