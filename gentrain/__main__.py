from gentrain.cli import main

main()
