from meshline.cli.main import main

main()
