using System.Globalization;

namespace Transport.Tests.Infrastructure;

/// <summary>Counts TCP connections in TIME_WAIT from the kernel's tables in /proc/net (Linux).</summary>
public static class TimeWaitSockets
{
    public const string Unsupported = "TIME_WAIT connections are read from /proc/net/tcp, which only Linux has.";

    public static bool IsSupported => OperatingSystem.IsLinux();

    private const string TimeWaitState = "06";

    /// <summary>TIME_WAIT connections whose local port is <paramref name="port"/>: the server's side, not the clients'.</summary>
    public static int CountWithLocalPort(int port)
        => Count("/proc/net/tcp", port, field: 1) + Count("/proc/net/tcp6", port, field: 1);

    /// <summary>TIME_WAIT connections whose remote port is <paramref name="port"/>: a client's side of connections to that server port.</summary>
    public static int CountWithRemotePort(int port)
        => Count("/proc/net/tcp", port, field: 2) + Count("/proc/net/tcp6", port, field: 2);

    private static int Count(string table, int port, int field)
    {
        if (!File.Exists(table))
        {
            return 0;
        }

        var count = 0;
        // "  sl  local_address rem_address   st ...", addresses as hex "ADDR:PORT".
        foreach (var line in File.ReadLines(table).Skip(1))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length > 3
                && fields[3] == TimeWaitState
                && int.Parse(fields[field].AsSpan(fields[field].IndexOf(':', StringComparison.Ordinal) + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port)
            {
                count++;
            }
        }

        return count;
    }
}
