"""Reading calls and logfile records, and the event model: what makes two events the same."""
