"""Ordered SQL migrations (`rowembed.migrations`, from the folder migrations/):
each runs once. Which change goes here: pgplugin/sql/README.md."""
