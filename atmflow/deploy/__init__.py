"""A real Flower deployment on one machine (SuperLink and one SuperNode per task on 127.0.0.1), for tests and
trials; ``docker/`` runs the same processes in containers."""
