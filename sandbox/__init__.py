"""Execution: the base image, the Docker sandbox, and the targets that build, test and benchmark in it."""
