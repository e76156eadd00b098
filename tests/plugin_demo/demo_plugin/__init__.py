"""A plugin for esolm: one model and one preset, registered through entry points."""
