module github.com/spillway/spillway/tools

go 1.26
