from egress_router.cli import main

main()
