from lakestack_streams.app import main

if __name__ == "__main__":
    main()
