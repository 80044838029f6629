"""Generated from protos/inference by `make proto`. Do not edit."""
