"""Generated from protos/vision/v1 by `make proto`. Do not edit."""
