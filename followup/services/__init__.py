"""Use cases that read and write the database: they call the pure core for every decision
and models/ for the rows, and take their session from the caller, who owns the transaction."""
