from hymba_bench.cli.app import main

main()
