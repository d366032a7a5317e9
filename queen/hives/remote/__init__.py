"""Hives on other machines: hives.conf, SSH, the link and its supervisor, install and its wheelhouse,
each hive's own token."""
