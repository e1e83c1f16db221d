"""Stages: each is a function from rows to rows. No stage opens the database or writes files;
`loop.py` persists after each one, which is what makes resume a property of the loop."""
