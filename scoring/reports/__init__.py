"""Reports to model owners: what a report says, its chart, and sending it by email."""
