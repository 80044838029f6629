"""Helpers shared by test files (no tests here): the digits dataset and a real trainer_svc on loopback."""
