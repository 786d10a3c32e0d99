from lakestack_das.app import main

if __name__ == "__main__":
    main()
