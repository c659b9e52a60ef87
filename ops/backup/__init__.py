"""Backups: continuous archiving, point-in-time recovery, and the restore drill."""
