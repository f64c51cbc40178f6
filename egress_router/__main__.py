from egress_router.cli import run

run()
