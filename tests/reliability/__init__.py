"""Reliability and security suite (issue 10): faults as states of the world."""
