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
}
