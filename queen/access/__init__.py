"""Who may do what on the queen: API keys for people and apps (keys.py), the scope each route needs
(scopes.py), the one middleware that checks both on every request (middleware.py), and the routes that
manage keys (routes.py). The queen's own token is the admin key `rbee` itself uses."""
