"""HTTP routes by domain; each module exports ROUTES."""
