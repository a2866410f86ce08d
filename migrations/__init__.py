"""Ordered SQL migrations for rowembed's tables (NNNN_name.sql). Never edited once released."""
