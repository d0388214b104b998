"""Lathe: model optimization as a service."""
