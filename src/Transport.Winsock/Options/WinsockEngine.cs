namespace Transport.Winsock;

/// <summary>The I/O engine under the transport's connections (<see cref="WinsockTransportOptions.Engine"/>).</summary>
[System.Text.Json.Serialization.JsonConverter(typeof(System.Text.Json.Serialization.JsonStringEnumConverter<WinsockEngine>))]
public enum WinsockEngine
{
    /// <summary>io_uring on Linux when its startup probe passes, otherwise the sockets engine.</summary>
    Auto,

    /// <summary>.NET's sockets: AcceptEx, DisconnectEx and I/O completion ports on Windows, epoll elsewhere.</summary>
    Sockets,

    /// <summary>The transport's own io_uring engine (Linux only): accepts posted ahead, completions on ring threads.</summary>
    IoUring,
}
