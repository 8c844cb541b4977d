"""A running board over SSH: deploy the payload (deploy.py), run the contest there
(bench.py); the connection, keys and host keys in ssh.py."""
