namespace Transport.Tests.Infrastructure;

/// <summary>Counts the sockets this process has open, from /proc/self/fd (Linux).</summary>
public static class ProcessSockets
{
    public const string Unsupported = "Counting a process's open sockets needs /proc/self/fd, which only Linux has.";

    public static bool IsSupported => OperatingSystem.IsLinux();

    public static int Count()
    {
        var count = 0;
        foreach (var fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget?.StartsWith("socket:", StringComparison.Ordinal) == true)
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // Closed while we looked.
            }
        }

        return count;
    }

    /// <summary>
    /// Counts this process's TCP sockets (matched by inode against /proc/net/tcp and tcp6) whose local or
    /// remote port is <paramref name="port"/>: unlike <see cref="Count"/>, sockets other tests open or close
    /// meanwhile do not move it.
    /// </summary>
    public static (int Local, int Remote) CountOnPort(int port)
    {
        var ports = new Dictionary<string, (int Local, int Remote)>(StringComparer.Ordinal);
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length > 9)
                {
                    ports[f[9]] = (int.Parse(Port(f[1]), System.Globalization.CultureInfo.InvariantCulture), int.Parse(Port(f[2]), System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }

        var (local, remote) = (0, 0);
        foreach (var fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal)
                    && ports.TryGetValue(target["socket:[".Length..^1], out var p))
                {
                    local += p.Local == port ? 1 : 0;
                    remote += p.Remote == port ? 1 : 0;
                }
            }
            catch (IOException)
            {
                // Closed while we looked.
            }
        }

        return (local, remote);
    }

    /// <summary>Waits (bounded) until the count falls to <paramref name="expected"/> or below; returns the last count.</summary>
    public static async Task<int> WaitForAtMostAsync(int expected, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        int count;
        while ((count = Count()) > expected && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }

        return count;
    }

    /// <summary>
    /// The open sockets, for a failure message: each TCP one with its local and remote port and state (from
    /// /proc/net/tcp and tcp6, matched by inode), the others by their inode alone.
    /// </summary>
    public static string Describe()
    {
        var tcp = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length > 9)
                {
                    tcp[f[9]] = $"{Port(f[1])}->{Port(f[2])} {State(f[3])}";
                }
            }
        }

        var seen = new List<string>();
        foreach (var fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal))
                {
                    var inode = target["socket:[".Length..^1];
                    seen.Add(tcp.TryGetValue(inode, out var what) ? what : $"fd {Path.GetFileName(fd)} (not in /proc/net/tcp: closed or never connected)");
                }
            }
            catch (IOException)
            {
            }
        }

        return string.Join(", ", seen.GroupBy(s => s).Select(g => g.Count() == 1 ? g.Key : $"{g.Key} x{g.Count()}"));
    }

    private static string Port(string address) => int.Parse(address[(address.IndexOf(':', StringComparison.Ordinal) + 1)..], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture).ToString(System.Globalization.CultureInfo.InvariantCulture);

    private static string State(string hex) => hex switch
    {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => hex,
    };
}
