"""The edge (Litestar, :5000) and the relay (:5006): authenticate, check the role rule, send."""
