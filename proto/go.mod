module github.com/spillway/spillway/proto

go 1.26
