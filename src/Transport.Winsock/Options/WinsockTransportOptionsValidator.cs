using Microsoft.Extensions.Options;

namespace Transport.Winsock.Options;

/// <summary>Checks <see cref="WinsockTransportOptions"/>; each failure names the option and its value.</summary>
internal sealed class WinsockTransportOptionsValidator : IValidateOptions<WinsockTransportOptions>
{
    internal const int MaxPendingAccepts = 1024;
    internal const int MaxSocketCap = 65536;
    internal static readonly TimeSpan MaxTimeout = TimeSpan.FromMinutes(5);
    internal static readonly TimeSpan MaxDeferFinTimeout = TimeSpan.FromSeconds(5);

    public ValidateOptionsResult Validate(string? name, WinsockTransportOptions options)
    {
        var failures = new List<string>();

        if (!Enum.IsDefined(options.Engine))
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{nameof(options.Engine)} must be Auto, Sockets or IoUring; it was {options.Engine}.");
        }

        CheckRange(failures, nameof(options.IoUringThreadCount), options.IoUringThreadCount, 0, 64);
        CheckRange(failures, nameof(options.PendingAccepts), options.PendingAccepts, 1, MaxPendingAccepts);
        CheckRange(failures, nameof(options.MaxPooledSockets), options.MaxPooledSockets, 0, MaxSocketCap);
        CheckRange(failures, nameof(options.MaxPendingDisconnects), options.MaxPendingDisconnects, 1, MaxSocketCap);
        CheckRange(failures, nameof(options.Backlog), options.Backlog, 1, int.MaxValue);
        CheckTimeout(failures, nameof(options.DrainTimeout), options.DrainTimeout);
        CheckTimeout(failures, nameof(options.DisconnectTimeout), options.DisconnectTimeout);
        CheckTimeout(failures, nameof(options.HalfCloseTimeout), options.HalfCloseTimeout);
        if (options.DeferFinTimeout < TimeSpan.Zero || options.DeferFinTimeout > MaxDeferFinTimeout)
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{nameof(options.DeferFinTimeout)} must be between zero (off) and {MaxDeferFinTimeout}; it was {options.DeferFinTimeout}.");
        }

        CheckRange(failures, nameof(options.IOQueueCount), options.IOQueueCount, 0, int.MaxValue);
        CheckRange(failures, nameof(options.DescriptorReserve), options.DescriptorReserve, 0, MaxSocketCap);
        if (options.CreateBoundListenSocket is null)
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{nameof(options.CreateBoundListenSocket)} must not be null; {nameof(WinsockTransportOptions)}.{nameof(WinsockTransportOptions.CreateDefaultBoundListenSocket)} is the default.");
        }

        CheckBufferSize(failures, nameof(options.MaxReadBufferSize), options.MaxReadBufferSize);
        CheckBufferSize(failures, nameof(options.MaxWriteBufferSize), options.MaxWriteBufferSize);

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    private static void CheckRange(List<string> failures, string option, int value, int min, int max)
    {
        if (value < min || value > max)
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{option} must be between {min} and {max}; it was {value}.");
        }
    }

    private static void CheckTimeout(List<string> failures, string option, TimeSpan value)
    {
        if (value <= TimeSpan.Zero || value > MaxTimeout)
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{option} must be more than zero and at most {MaxTimeout}; it was {value}.");
        }
    }

    private static void CheckBufferSize(List<string> failures, string option, long? value)
    {
        if (value < 0)
        {
            failures.Add($"{nameof(WinsockTransportOptions)}.{option} must be null (unlimited) or at least 0; it was {value}.");
        }
    }
}
